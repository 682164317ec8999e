"""Grafana dashboards as code.

``model`` (typed panels that declare the tables they read) -> one module per dashboard (``overview``,
``pollution``, ``air``, ``water``, ``grid``, ``meters``, ``vehicles``, ``traffic``) -> ``render``
(grafana-foundation-sdk builders, Grafana JSON) -> ``build`` (files for provisioning, the read-only
role's grants) / ``push`` (grafana-client) / ``verify`` (Grafana's macro expansion, run against the
database). The CLI is ``wulian dashboards build|push|verify|grants``.
"""
