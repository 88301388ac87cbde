"""Event data for Cohort: the CDNOW benchmark, partners' own exports, a synthetic multi-platform generator, and
splits of one data set into partners — all in the standard event schema of ``models.schema``."""

from models.data.cdnow import (
    CDNOW_CALIBRATION_END, CDNOW_HOLDOUT_END, CDNOW_START, load_cdnow, load_cdnow_sample,
)
from models.data.files import load_events, load_events_report
from models.data.generator import PROFILES, PlatformProfile, Windows, generate_platforms
from models.data.partition import partition_by_hash, partition_noniid, partner_names, user_uniforms

__all__ = [
    "CDNOW_CALIBRATION_END", "CDNOW_HOLDOUT_END", "CDNOW_START", "load_cdnow", "load_cdnow_sample",
    "load_events", "load_events_report",
    "PROFILES", "PlatformProfile", "Windows", "generate_platforms",
    "partition_by_hash", "partition_noniid", "partner_names", "user_uniforms",
]
