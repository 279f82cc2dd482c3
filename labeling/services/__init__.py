"""Verbs that change labeling state. Views, the API, commands and tasks call these."""
