"""The MLflow registry: tracking client and experiments, aliases and the one champion loader, promotion with
its audit, the portable pyfunc.
"""
