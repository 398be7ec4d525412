"""Held-out evaluation of a challenger against the champion, and the promotion gate."""
