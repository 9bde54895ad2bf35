"""The stages the notebooks call, the papermill runner that executes them in order, the Colab demo."""
