"""lab: N Apache httpd replicas behind an nginx load balancer, on one Docker engine."""

__version__ = "0.1.0"
