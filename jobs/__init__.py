"""Domain of monkeyjobs: settings, states, models, storage layout and queue names. No torch."""
