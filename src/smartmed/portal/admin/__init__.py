"""Basic information management: organisations, departments, staff, teams, accounts."""
