"""Who may call the service and how much: named API keys (keys.py) and what each has used (usage.py)."""
