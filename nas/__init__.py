"""The search engine: configs, data, costs, training, the Optuna study, export and reports."""
