// Each test runs its own three-member etcd: one at a time keeps elections steady on a small, shared machine.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
