"""Analytics: SQL-on-FHIR v2 ViewDefinitions compiled to SQL (DuckDB, PostgreSQL, Spark).

See docs/analytics.md and https://build.fhir.org/ig/FHIR/sql-on-fhir-v2/.
"""
