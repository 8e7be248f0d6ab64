"""Workflows: runs that orchestrate the stages below them (the experiment and the demo).

The top floor of the engine: a workflow may use every stage, and no stage imports a workflow.
"""
