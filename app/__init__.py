"""The Gradio demo over saved checkpoints (`python app/app.py --help`)."""
