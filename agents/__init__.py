"""Stream wiring: the embedded broker, topics, the faust app with one thin agent per stage, the watcher.

Nothing here does science; every agent calls a function of :mod:`ast3stream.pipeline`.
"""
