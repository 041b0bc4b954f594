"""Sampling: sigma schedules, the flow-matching solvers, and the denoising loop of a render."""
