"""After training: a trained model loaded (trained), evaluated (evaluation) and exported
(exports). Imports nothing of proof or cli.
"""
