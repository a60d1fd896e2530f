"""Commands of ``python -m fedpurel_lite``: ``run`` (run, compare, features), ``demo`` (the notebook
series), ``pretrain`` (the embedded tiny CLIP), ``site`` (the course site), ``student`` (the student
edition). ``fedpurel_lite.__main__`` dispatches to them.
"""
