# SPDX-License-Identifier: Apache-2.0
"""The table that :func:`~pyro_discrete.diagnostics.compare_estimators` returns."""

import csv
import math

__all__ = ["COLUMNS", "Comparison"]

COLUMNS = ["estimator", "variance", "squared_bias", "mse", "bias_z", "loss", "ms_per_step", "evaluations", "draws"]


class Comparison(list):
    """
    Rows of :func:`~pyro_discrete.diagnostics.compare_estimators` (dicts); prints as a Markdown table.
    :attr:`statistics` maps each estimator's name to its
    :class:`~pyro_discrete.diagnostics.GradientStatistics`.
    """

    def __init__(self, rows, statistics):
        super().__init__(rows)
        #: estimator name -> its :class:`~pyro_discrete.diagnostics.GradientStatistics`
        #: (the per-parameter results behind the rows)
        self.statistics = statistics

    def to_markdown(self, columns=COLUMNS):
        """
        The rows as a Markdown table (also what ``str`` gives): one line per
        estimator, the ``columns`` in order (floats to 3 significant digits,
        ``nan`` as ``–``, a missing entry empty).
        """
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in self:
            lines.append("| " + " | ".join(_format(row.get(c, "")) for c in columns) + " |")
        return "\n".join(lines)

    __str__ = to_markdown

    def to_csv(self, path, columns=COLUMNS):
        """
        Writes the rows to the CSV file ``path`` (overwritten): a header of
        ``columns``, then one line per estimator with unformatted values (keys
        not in ``columns`` are left out, missing ones empty). Returns ``path``.
        """
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self)
        return path

    def plot(self, path=None, ax=None):
        """
        Variance against cost (ms per step), one point per estimator, with the
        squared bias as a second marker where measured. Needs matplotlib.
        """
        try:
            import matplotlib

            if ax is None and path is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError("Comparison.plot needs matplotlib (pip install matplotlib)") from e
        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4))
        for row in self:
            x = row["ms_per_step"]
            ax.scatter([x], [max(row["variance"], 1e-300)], marker="o")
            ax.annotate(row["estimator"], (x, max(row["variance"], 1e-300)), fontsize=8)
            if row["squared_bias"] == row["squared_bias"] and row["squared_bias"] > 0:
                ax.scatter([x], [row["squared_bias"]], marker="x", color="k")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ms per step")
        ax.set_ylabel("gradient variance (o), squared bias (x)")
        if fig is not None:
            fig.tight_layout()
            if path is not None:
                fig.savefig(path, dpi=100)
                plt.close(fig)
        return ax


def _format(value):
    if isinstance(value, float):
        if value != value:
            return "–"
        if value == 0 or math.isinf(value):
            return str(value)
        return "{:.3g}".format(value) if abs(value) < 1e4 else "{:.3e}".format(value)
    return str(value)
