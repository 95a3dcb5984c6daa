"""The training loop, checkpoints, task adapters, configs and the binaries (`python -m launch.NAME`).

A binary first re-executes itself with huge pages for XLA:CPU's buffers (launch/huge_pages.py) and sets XLA:CPU's
convolution kernels (launch/xla_cpu.py), before it imports anything heavy; importing the library does nothing of the
kind.
"""
from launch import huge_pages
from launch import xla_cpu

huge_pages.reexec_binary()
xla_cpu.apply_to_binary()
