package kubetest

// discovery returns the discovery document at path, if path is one: /api, /apis, the group,
// and each served group version's resource list. Only the groups served appear, so a client
// that probes for another (the Inference Extension's v1alpha2 objectives) finds it absent.
func discovery(path, addr string) (any, bool) {
	verbs := []string{"get", "list", "watch"}
	group := map[string]any{
		"name":             poolGroup,
		"versions":         []any{map[string]string{"groupVersion": poolGroup + "/" + poolVersion, "version": poolVersion}},
		"preferredVersion": map[string]string{"groupVersion": poolGroup + "/" + poolVersion, "version": poolVersion},
	}
	switch path {
	case "/version":
		return map[string]string{"major": "1", "minor": "35", "gitVersion": "v1.35.0-kubetest", "platform": "linux/amd64"}, true
	case "/api":
		return map[string]any{"kind": "APIVersions", "versions": []string{"v1"},
			"serverAddressByClientCIDRs": []any{map[string]string{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}}}, true
	case "/apis":
		return map[string]any{"kind": "APIGroupList", "apiVersion": "v1", "groups": []any{group}}, true
	case "/apis/" + poolGroup:
		g := map[string]any{"kind": "APIGroup", "apiVersion": "v1"}
		for k, v := range group {
			g[k] = v
		}
		return g, true
	case "/api/v1":
		return resourceList("v1", podKind, verbs), true
	case "/apis/" + poolGroup + "/" + poolVersion:
		return resourceList(poolGroup+"/"+poolVersion, poolKind, verbs), true
	}
	return nil, false
}

func resourceList(gv string, k kind, verbs []string) map[string]any {
	return map[string]any{
		"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
		"resources": []any{map[string]any{
			"name": k.resource, "singularName": "", "namespaced": true, "kind": k.kind, "verbs": verbs,
		}},
	}
}
