"""raysel's test suite (a package, so that test helpers such as tests.ray_head import by one name everywhere)."""
