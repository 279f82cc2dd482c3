"""The pure ML core of modelhub: tiny built-in models, safe loading, batched generation.

Nothing here imports Django; the models, jobs and views of modelhub call into it.
"""
