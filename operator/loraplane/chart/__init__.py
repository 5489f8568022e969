"""The Helm chart's generated parts: values (schema, defaults, README), CRD templates, env."""
