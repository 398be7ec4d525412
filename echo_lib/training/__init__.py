"""Training: the one DeepSpeed rank entry point, its launcher, bootstrap of v0 and refinement of the champion."""
