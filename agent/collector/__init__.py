"""The central collector: receives run reports from every node, stores them (SQLite or PostgreSQL) and
shows which host/job is fresh, overdue, failing or silent: dashboard, JSON API and Prometheus metrics."""
