"""The rule classifier: rule sets as columns, compiled into the maps the BPF programs look up."""
