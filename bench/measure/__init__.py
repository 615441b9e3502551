"""Measurement: hardware profiles, timing protocol, isolated workers, machine fingerprint."""

from bench.measure.fingerprint import fingerprint_hash, machine_fingerprint
from bench.measure.isolation import (
    IsolationUnavailable,
    Measurement,
    MeasurementError,
    measure_isolated,
    measure_profile,
)
from bench.measure.profiles import Profile, ProfileError, Threads, list_profiles, load_profile
from bench.measure.protocol import run_protocol, summarize

__all__ = [
    "IsolationUnavailable",
    "Measurement",
    "MeasurementError",
    "Profile",
    "ProfileError",
    "Threads",
    "fingerprint_hash",
    "list_profiles",
    "load_profile",
    "machine_fingerprint",
    "measure_isolated",
    "measure_profile",
    "run_protocol",
    "summarize",
]
