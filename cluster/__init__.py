"""Everything that takes config.yaml from one machine to a Ray cluster: manifests, load balancer, dashboards."""
