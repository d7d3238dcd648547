package main

import (
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/discovery/kube"
)

// kubeFlags point a router at an InferencePool: the flags of the Gateway API Inference
// Extension's Endpoint Picker, plus what its Pods do not say.
type kubeFlags struct {
	on  bool
	cfg kube.Config
}

func (k *kubeFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&k.on, "kubernetes", false, "route to the ready Pods of an InferencePool (--pool-name), followed with Kubernetes informers; readiness waits for their first sync (docs/KUBERNETES.md)")
	f.StringVar(&k.cfg.Kubeconfig, "kubeconfig", "", "kubeconfig for --kubernetes (default: the in-cluster service account, then $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&k.cfg.PoolName, "pool-name", "", "--kubernetes: name of the InferencePool this router picks endpoints for")
	f.StringVar(&k.cfg.PoolNamespace, "pool-namespace", "", "--kubernetes: namespace of the InferencePool and its Pods (default: the router's own, or the kubeconfig context's)")
	f.StringVar(&k.cfg.PoolGroup, "pool-group", kube.DefaultPoolGroup, "--kubernetes: API group of the InferencePool ("+kube.DefaultPoolGroup+" for v1, "+kube.AlphaPoolGroup+" for v1alpha2)")
	f.StringVar(&k.cfg.RoleLabel, "role-label", kube.DefaultRoleLabel, "--kubernetes: Pod label naming the engine's role (prefill, decode, both; absent = aggregated)")
	f.StringVar(&k.cfg.ModelLabel, "model-label", kube.DefaultModelLabel, "--kubernetes: Pod label naming the model it serves (annotation "+kube.AnnotationModels+" wins: model names with '/' are no label values)")
	f.StringArrayVar(&k.cfg.Models, "model", nil, "--kubernetes: model served by Pods that name none (repeatable)")
	f.IntVar(&k.cfg.KVEventsPort, "kv-events-port", 0, "--kubernetes: port of each engine's ZMQ KV-event publisher on its Pod IP, offset by the target port's index (annotation "+kube.AnnotationKVEventsPort+" wins; 0 = none: approximate routing)")
}

// source returns the InferencePool watch, or nil without --kubernetes.
func (k *kubeFlags) source(blockSize int, log *slog.Logger) (*kube.Source, error) {
	if !k.on {
		return nil, nil
	}
	cfg := k.cfg
	cfg.BlockSize = blockSize
	return kube.New(cfg, log)
}
