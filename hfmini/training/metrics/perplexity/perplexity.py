"""Perplexity from summed token log-likelihoods: exp(mean NLL per predicted token)."""

import math

import datasets
import evaluate

_DESCRIPTION = """
Perplexity = exp(total negative log-likelihood in nats / number of predicted tokens), with the loss
in nats per token returned beside it. Unlike the Hub's "perplexity" metric, it does not load a model:
it takes the sums a training loop already has, so it works offline and for models of any size.
"""

_KWARGS = """
Args:
    nll (list of float): summed negative log-likelihood in nats, one value per row.
    num_tokens (list of float): tokens predicted in that row.
Returns:
    perplexity (float), loss (float, nats per token)
Example:
    >>> metric = evaluate.load("hfmini/metrics/perplexity")
    >>> round(metric.compute(nll=[2.0], num_tokens=[2])["perplexity"], 4)
    2.7183
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"nll": datasets.Value("float64"), "num_tokens": datasets.Value("float64")}
            ),
        )

    def _compute(self, nll, num_tokens):
        total_tokens = sum(num_tokens)
        if total_tokens <= 0:
            raise ValueError("perplexity needs at least one predicted token")
        loss = sum(nll) / total_tokens
        return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss}  # exp overflows past ~709
