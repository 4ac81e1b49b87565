package launch

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// compactEtcd writes one key outside the API server's prefix (so the revision moves past
// every resourceVersion a client holds) and compacts etcd's history up to it: a watch or
// list resumed from an older resourceVersion then gets 410 Gone from the real server.
func (b *bed) compactEtcd() (int64, error) {
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{b.info.Etcd}, DialTimeout: 5 * time.Second})
	if err != nil {
		return 0, err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	put, err := client.Put(ctx, "/canaryd-testbed/compaction", time.Now().String())
	if err != nil {
		return 0, fmt.Errorf("etcd put: %w", err)
	}
	rev := put.Header.Revision
	if _, err := client.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return 0, fmt.Errorf("etcd compact at %d: %w", rev, err)
	}
	return rev, nil
}
