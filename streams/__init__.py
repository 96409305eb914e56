"""The streaming side: settings, broker resolution, topics, the Faust app,
agents, producers and the CLI. The only package that imports Faust (lazily:
importing ``streams`` itself does not import Faust)."""
