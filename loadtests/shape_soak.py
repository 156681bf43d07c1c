"""The soak load shape, for Locust's -f:
``locust -f loadtests/locustfile.py,loadtests/shape_soak.py --config loadtests/SCENARIO.conf``
(Locust runs the one shape class its files hold; see ``loadtests/shapes.py``)."""

from loadtests.shapes import Soak

__all__ = ["Soak"]
