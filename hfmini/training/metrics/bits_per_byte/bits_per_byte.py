"""Bits per byte: how many bits the model needs per UTF-8 byte of text. Tokenizer-independent."""

import math

import datasets
import evaluate

_DESCRIPTION = """
Bits per byte = total negative log-likelihood in nats / (ln 2 × UTF-8 bytes of the text scored).
Each input row is a part of the text scored: the summed NLL (nats) of its predicted tokens and the
number of UTF-8 bytes those tokens stand for. Rows are summed before dividing, so any split of the
text into rows gives the same figure.
"""

_KWARGS = """
Args:
    nll (list of float): summed negative log-likelihood in nats, one value per row.
    num_bytes (list of float): UTF-8 bytes of the predicted text, one value per row.
Returns:
    bits_per_byte (float)
Example:
    >>> metric = evaluate.load("hfmini/metrics/bits_per_byte")
    >>> metric.compute(nll=[6.931], num_bytes=[10])["bits_per_byte"]  # 10 bits over 10 bytes
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class BitsPerByte(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"nll": datasets.Value("float64"), "num_bytes": datasets.Value("float64")}
            ),
        )

    def _compute(self, nll, num_bytes):
        total_bytes = sum(num_bytes)
        if total_bytes <= 0:
            raise ValueError("bits_per_byte needs at least one byte of scored text")
        return {"bits_per_byte": sum(nll) / (math.log(2) * total_bytes)}
