"""The canvas every figure is drawn on: a matplotlib figure with its own Agg canvas, no
pyplot state, so figures work headless and whatever pyplot's backend is."""

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Resolution of saved figures.
DPI = 100


def agg_figure(figsize: tuple[float, float]) -> Figure:
    """A figure drawn by the Agg backend, whatever pyplot's backend is."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig
