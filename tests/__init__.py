"""raysel's test suite (a package, so that test helpers such as tests.fake_cluster import by one name everywhere)."""
