//! Routes from `networking.k8s.io/v1` Ingresses of canaryd's class, with the ingress-nginx canary annotations.
