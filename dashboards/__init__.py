"""Grafana dashboards (grafana-foundation-sdk), Prometheus scrape config and alert rules for ral_dist runs."""
