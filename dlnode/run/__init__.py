"""One call: its rules (`rules`), `integrate`, and `resume`."""
