"""Reports: training curves and confusion-matrix plots, and the multi-model comparison."""
