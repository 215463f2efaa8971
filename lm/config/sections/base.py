"""What every section file shares: the frozen dataclass decorator."""

from __future__ import annotations

import dataclasses

frozen = dataclasses.dataclass(frozen=True)
