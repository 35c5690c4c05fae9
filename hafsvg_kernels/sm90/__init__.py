"""Static analysis of the Triton kernels compiled for sm_90a (H100), without a GPU.

``python -m hafsvg_kernels.sm90_report`` compiles every kernel at the configuration its launcher
picks for each workload row of the paper models (the aligner's levels at the sampling batch, and
the recurrent step), reads registers / spills / shared memory from ptxas and cuobjdump, counts
the main loop's instructions in the SASS, and models the time against the physical floor.
Modules (none is imported by ``import hafsvg_kernels``):

* :mod:`.compile` — ahead-of-time compilation with the launcher's argument specialisation, and
  the resource usage of the cubin;
* :mod:`.plans` — what the launchers launch for each workload row (kernels, constexprs, grids,
  loop trip counts);
* :mod:`.sass` — cuobjdump SASS parsing: loops, loop nests, instruction counts, MMA kind;
* :mod:`.model` — the device constants, occupancy, the modeled time and the physical floor;
* :mod:`.report` — the whole analysis, JSON / Markdown output, and the command line.
"""
