"""Faults and small machines: issue 11's scenarios (RELIABILITY 23-25 and more)."""
