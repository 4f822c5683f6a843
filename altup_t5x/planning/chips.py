"""Memory per JAX device of the accelerators a plan is checked against."""
from typing import Any, Dict, Sequence

GiB = 1024 ** 3

# Memory per device (one JAX device) in bytes. Sources: Google Cloud TPU system architecture
# pages (v3: 32 GiB HBM per chip = 2 cores x 16 GiB, a JAX device is one core; v4: 32 GiB per chip;
# v5e: 16 GiB per chip; v5p: 95 GiB per chip) and NVIDIA's A100 (40 GB / 80 GB) and H100 SXM
# (80 GB) data sheets.
CHIPS: Dict[str, int] = {
    'tpu_v3': 16 * GiB,
    'tpu_v4': 32 * GiB,
    'tpu_v5e': 16 * GiB,
    'tpu_v5p': 95 * GiB,
    'a100_40gb': 40 * 10 ** 9,
    'a100_80gb': 80 * 10 ** 9,
    'h100_80gb': 80 * 10 ** 9,
}


def fits_table(need: int, chips: Sequence[str]) -> Dict[str, Dict[str, Any]]:
  """Per chip: its memory, whether `need` bytes per device fit in it, and the margin."""
  return {c: {'memory_bytes': CHIPS[c], 'fits': need <= CHIPS[c],
              'margin_bytes': CHIPS[c] - need} for c in chips}


def format_gib(x) -> str:
  """'1.234 GiB', or '-' for a quantity not measured."""
  return '-' if x is None else f'{x / GiB:.3f} GiB'
