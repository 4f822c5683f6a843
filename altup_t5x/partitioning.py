"""Logical axis names of altup-t5x, how they are partitioned, and how Adafactor factors them.

Every parameter and main activation carries logical axis names. The T5.1.1 part uses T5X's names
(batch, length, embed, mlp, heads, kv, joined_kv, vocab, relpos_buckets). AltUp adds:

| name             | on                                                  | mesh axis | Adafactor |
|------------------|-----------------------------------------------------|-----------|-----------|
| altup_blocks     | K axis of `predict` [K, K], `correct` [K],          | none      | BATCH     |
|                  | `altup_reduce` [K, d, d], activations [b, l, K, d]  | (replic.) |           |
| altup_blocks_in  | second K axis of `predict` (the block read from)    | none      | NONE      |
| altup_embed_out  | output axis of `altup_reduce` [K, d, d]             | none      | COLUMN    |
| altup_router     | router output of dynamic coefficients (size K)      | none      | NONE      |

Scanned stacks (AltUpConfig.scan_layers) stack parameters on T5X's own 'layers' axis: replicated
(`standard_logical_axis_rules` below, as T5X's) and factored as BATCH by T5X's standard Adafactor
rules, so every stacked AltUp parameter keeps a valid spec (BATCH mixes with ROW/COLUMN or NONE).

The K axis is tiny (2-4) and every block of a token is needed by every layer, so it is replicated;
the coefficients are K^2 + K scalars, too small to factor (with no ROW/COLUMN axis T5X keeps them
unfactored). 'altup_blocks' is BATCH, as T5X marks 'layers': the [K, d, d] projection is then
factored as K separate d x d kernels ('embed' is ROW in T5X's rules); T5X rejects a spec that mixes
NONE with ROW and COLUMN.

T5X's Adafactor raises KeyError for an axis name without a factor rule, so the model gin must extend
`adafactor.Adafactor.logical_factor_rules` with `t5x_factor_rules()` (see
gin/models/t5x_encoder_decoder.gin) and `partitioning.standard_logical_axis_rules.additional_rules`
with ALTUP_AXIS_RULES.
"""
from typing import Dict, List, Optional, Sequence, Tuple

AxisRules = Sequence[Tuple[str, Optional[str]]]

# Partitioning: logical name -> mesh axis (None = replicated).
ALTUP_AXIS_RULES: List[Tuple[str, Optional[str]]] = [
    ('altup_blocks', None),
    ('altup_blocks_in', None),
    ('altup_embed_out', None),
    ('altup_router', None),
]

# Adafactor factoring, by FactorDim member name (T5X's `t5x.adafactor.FactorDim`).
ALTUP_FACTOR_RULES: Dict[str, str] = {
    'altup_blocks': 'BATCH',
    'altup_blocks_in': 'NONE',
    'altup_embed_out': 'COLUMN',
    'altup_router': 'NONE',
}

# Mixture of experts (altup_t5x.moe): experts are split over the data axis (expert parallelism),
# as T5X's MoE does; the router's expert axis and the Sequence-AltUp scalars are 'unmodeled'
# (replicated, not factored).
MOE_AXIS_RULES: List[Tuple[str, Optional[str]]] = [
    ('expert', 'data'),
    ('unmodeled', None),
]
MOE_FACTOR_RULES: Dict[str, str] = {
    'expert': 'BATCH',
    'unmodeled': 'NONE',
}


def standard_logical_axis_rules(model_axis: str = 'model', data_axis: str = 'data',
                                additional_rules: AxisRules = ()) -> List[Tuple[str, Optional[str]]]:
  """T5X's default 1-D model parallel + data parallel rules, plus the AltUp names.

  Same mapping as T5X's `partitioning.standard_logical_axis_rules()` with its defaults
  (activation and parameter partitioning dims 1): batch -> data; vocab, mlp, heads, joined_kv ->
  model; the rest replicated.
  """
  rules = [
      ('batch', data_axis),
      ('vocab', model_axis),
      ('embed', None),
      ('mlp', model_axis),
      ('heads', model_axis),
      ('kv', None),
      ('joined_kv', model_axis),
      ('relpos_buckets', None),
      ('abspos_buckets', None),
      ('length', None),
      ('layers', None),
      ('stack', None),
      ('mlp_activations', None),
      ('expert', data_axis),
      ('unmodeled', None),
  ]
  rules.extend(ALTUP_AXIS_RULES)
  rules.extend(additional_rules)
  return _dedupe(rules)


def _dedupe(rules):
  """Later rules win, as an override list would in gin."""
  seen = {}
  for name, axis in rules:
    seen[name] = axis
  return list(seen.items())


def t5x_factor_rules():
  """ALTUP_FACTOR_RULES + MOE_FACTOR_RULES as T5X `adafactor.FactorDim` values (needs T5X)."""
  from t5x import adafactor  # pylint: disable=g-import-not-at-top  (T5X is optional)
  rules = {**ALTUP_FACTOR_RULES, **MOE_FACTOR_RULES}
  return {name: getattr(adafactor.FactorDim, dim) for name, dim in rules.items()}


def t5x_axis_rules() -> List[Tuple[str, Optional[str]]]:
  """The rules to add to T5X's `partitioning.standard_logical_axis_rules.additional_rules`."""
  return ALTUP_AXIS_RULES + MOE_AXIS_RULES
