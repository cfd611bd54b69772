"""Moving memories between deployments: export and import of whole histories (transfer) in a sealed file
(export_file)."""
