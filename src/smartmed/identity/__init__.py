"""Unified identity: accounts and roles, the OAuth 2.0 / OpenID Connect provider with SMART
App Launch v2, login security, and SMART scope enforcement on the FHIR API."""
