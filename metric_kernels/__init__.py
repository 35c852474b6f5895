"""The internals of `metrics.py`, one concern per module, so each can be read and tested alone.

    arrays     numpy and torch behind one small interface; conversions between them
    inputs     shape and value checks that name the wrong input before any work
    grouping   one sort per class: distinct scores with their positive/negative counts
    ranking    the descending curve: AUROC, AP, F1-max, the F1-max threshold and its IoU
    regions    connected ground-truth regions (8-connectivity, as the reference)
    aupro      the reference's 200-threshold AUPRO and MVTec AD's exact one
    device     falling back to the CPU when the GPU runs out of memory
    undefined  the warning for a metric without a value

None of them imports `metrics` (it imports them) or torch at import time: the command
line starts without torch, which is only loaded when a tensor is passed.
"""
