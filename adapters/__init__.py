"""Platform adapters: platform events -> core.Message; core.Reply -> platform calls."""
