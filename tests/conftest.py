"""Suite-wide: pytester, to run ism's pytest plugin on test files of its own."""

pytest_plugins = ["pytester"]
