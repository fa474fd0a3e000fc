"""OPC UA StatusCodes used from driver to HMI, as plain uint32 constants.

The numeric values are those of OPC UA Part 6 (the same as ``asyncua.ua.StatusCodes``), so a
status travels from a driver through the tag database to an HMI client without translation.
The core does not import asyncua for these: codecs and the tag database stay I/O-free.
"""

from __future__ import annotations

GOOD = 0x00000000
UNCERTAIN_LAST_USABLE_VALUE = 0x40900000
BAD_COMMUNICATION_ERROR = 0x80050000
BAD_NO_COMMUNICATION = 0x80310000
BAD_WAITING_FOR_INITIAL_DATA = 0x80320000
BAD_OUT_OF_RANGE = 0x803C0000
BAD_CONFIGURATION_ERROR = 0x80890000
BAD_DEVICE_FAILURE = 0x808B0000

NAMES = {
    GOOD: "Good",
    UNCERTAIN_LAST_USABLE_VALUE: "Uncertain_LastUsableValue",
    BAD_COMMUNICATION_ERROR: "Bad_CommunicationError",
    BAD_NO_COMMUNICATION: "Bad_NoCommunication",
    BAD_WAITING_FOR_INITIAL_DATA: "Bad_WaitingForInitialData",
    BAD_OUT_OF_RANGE: "Bad_OutOfRange",
    BAD_CONFIGURATION_ERROR: "Bad_ConfigurationError",
    BAD_DEVICE_FAILURE: "Bad_DeviceFailure",
}


def name(code: int) -> str:
    """Readable name of a status code, or its hex value when it is not one of ours."""
    return NAMES.get(int(code), f"0x{int(code):08X}")


def is_good(code: int) -> bool:
    """Severity bits 00: Good."""
    return (int(code) & 0xC0000000) == 0


def is_bad(code: int) -> bool:
    """Severity bits 10: Bad."""
    return (int(code) & 0x80000000) != 0
