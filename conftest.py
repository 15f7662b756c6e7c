pytest_plugins = ("backbone.testing",)
